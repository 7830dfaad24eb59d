"""Structured output helpers: pure functions, no I/O.

* :mod:`.validate` compiles JSON Schemas (formats really checked) and lists errors.
* :mod:`.extract` finds the JSON value in a model's text (fences, prose, repair, truncation).
* :mod:`.xmlcheck` extracts and safely parses XML, checks the root and an XSD.
* :mod:`.lower` builds provider-native request fields, instructions and retry feedback.
* :mod:`.partial` previews partial JSON while streaming.
"""
