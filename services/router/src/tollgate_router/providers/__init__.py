"""Model providers behind one small streaming interface (:class:`~.base.Provider`)."""
