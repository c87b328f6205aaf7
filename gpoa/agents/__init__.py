"""Agents that edit a prompt set on the dual-space graph.

- :mod:`gpoa.agents.network` — the node-set network every learner shares (one score per node + STOP);
- :mod:`gpoa.agents.greedy` — fast deterministic inference with the do-no-harm gate;
- :mod:`gpoa.agents.policy_file` — policy files (learner, settings, observation feature names);
- :mod:`gpoa.agents.dqn` — Double DQN (replay, update rule, training loop).
"""
