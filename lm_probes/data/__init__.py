"""What the models read: preference pairs and the shipped datasets (pairs, datasets/), the Persona
statements (persona), the Hamiltonian-cycle task (cycles), and the quality of rewrites (rewrites)."""
