"""Pure logic of the decision: belief fusion math, the policy, belief coverage. No I/O, no clients.

Imports only the base modules (stream.config, errors, log, metrics); everything else builds on it.
"""
