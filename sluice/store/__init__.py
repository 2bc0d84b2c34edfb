"""The only package that knows Redis: the client, every key name, users and
sessions, connections and API keys, the event streams (the append script and
the reads the fan-out makes), and the embedded development server."""
