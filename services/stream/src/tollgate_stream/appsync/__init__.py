"""The AWS AppSync Events protocol: WebSocket (``/event/realtime``) and HTTP publish."""
