"""flask-sse 1.0.0 as its README sets it up: Redis pub/sub, one blueprint.

Run under gunicorn with one gevent worker, exactly like Sluice. Each client
gets its own pub/sub connection (that is how flask-sse works), and nothing
is written until the first message: flask-sse has no heartbeat or resume.
"""

from __future__ import annotations

import os

from flask import Flask
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ["REDIS_URL"]
app.register_blueprint(sse, url_prefix="/stream")
