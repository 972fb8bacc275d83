"""The web page the edge serves at ``/``: sign in, chat over the AppSync protocol, watch usage.

Static files (``static/``: ES modules, no build step) plus two routes: ``/web/config.json``
(how this edge signs people in, and its channel namespaces) and, with the development IdP
(``TOLLGATE_STREAM_WEB_SIGN_IN=local``), ``POST /web/dev-token``.
"""

from tollgate_stream.web.routes import WebRoutes

__all__ = ["WebRoutes"]
