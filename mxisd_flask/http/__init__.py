"""The HTTP layer: blueprints that parse, call a service and answer JSON."""

# Sent with every answer, errors included, the app's (app.py) and those
# gunicorn's workers give themselves (workers.py): browsers read none without.
CORS_HEADERS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS"),
    (
        "Access-Control-Allow-Headers",
        "Origin, X-Requested-With, Content-Type, Accept, Authorization",
    ),
]
