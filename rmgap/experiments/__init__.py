"""The paper's experiments on real LMs, one module each (``main(argv)``), each with ``cpu`` and
``paper`` presets:

persona       the controlled token-level shift (Persona statements, paraphrased responses)
shifts        real-world token-level and domain shifts (+ shifts_analysis, shifts_report)
hamiltonian   verification without generation (+ hamiltonian_generation: what the LMs generate)
mitigations   fixes of the IM-RM: one-step prediction beside training
"""
