"""The dispatcher: a Flask app over a task store, with a heartbeat monitor."""
