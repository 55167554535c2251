"""The paper's experiments on real LMs, one module each, each with ``cpu`` and ``paper`` presets:

persona   the controlled token-level shift (Persona statements, paraphrased responses)   rmgap persona
"""
