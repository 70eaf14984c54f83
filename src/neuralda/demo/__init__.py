"""The bundled demo: an original corpus (poems.jsonl) and a local website that serves it (site.py)."""
