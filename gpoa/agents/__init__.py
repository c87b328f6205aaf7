"""Agents that edit a prompt set on the dual-space graph.

``dqn`` holds the Double DQN agent: the node-set Q-network shared by every agent, its fast greedy
policy, the replay buffer, the training loop and the policy checkpoints.
"""
