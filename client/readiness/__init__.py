"""The checks of `fedclinic site doctor` (entry: `client.doctor.run_doctor`), one kind per module.

`certificates` (the CA and the server's certificate), `network` (reachability, the TLS
handshake), `site_key` (the key Flower authenticates the site with), `data` (the site's data is
there and passes validation), `storage` (the state folder and free disk), `policy` (the site's
privacy policy file and the budget left under it); `address` parses the server address they
share.
"""
