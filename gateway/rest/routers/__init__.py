"""The REST app's routes, one router per resource: diagnosis, the service's own state, the web app."""
