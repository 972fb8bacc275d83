"""Bridge mode: a real AppSync Events API is the front door, the edge is its backend.

The edge subscribes to the remote's inbound namespace over the realtime WebSocket, puts each
event into the pipeline like a local publish, and publishes the replies to the remote with
the HTTP publish API. AppSync's ``data`` messages do not name their channel, so the remote's
inbound namespace must add it: an ``onPublish`` handler that returns each event with
``channel`` set to ``ctx.info.channel.path`` (see docs/edge.md). AppSync has authorized the
publish, so the bridge trusts that channel's ``<sub>`` segment as the principal.
"""
