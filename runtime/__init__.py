"""Flower plumbing that the server and the site share: the environment of Flower's child
processes, ports, process groups, object-pull tuning and the app bundle. Imports only `common`
(and Flower); `server/` and `client/` import it, never each other."""
