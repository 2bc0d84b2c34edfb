"""The only package that knows gevent and sockets: the per-process hub (one shared
read, resume decisions, heartbeats), listeners, the sinks that write a stream, the
SSE wire formats, and the stream response loop."""
