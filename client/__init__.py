"""Site side: the ClientApp that trains and evaluates on a hospital's own data."""
