"""The HTTP side: the app factory, the error edge, auth, the one URL table and the handlers."""
