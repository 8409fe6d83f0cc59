"""RL on m1jax's own rollouts: CISPO (the MiniMax-M1 algorithm), with DAPO and GRPO as
presets of the same loop.

  losses.py      per-token policy-loss registry (cispo, ppo_clip, reinforce, gspo) and the
                 aggregation weights
  advantages.py  group-relative advantages, dynamic sampling
  rewards.py     task grader rewards, DAPO's soft overlong penalty
  rollout.py     m1jax.generate rollouts -> fixed-shape trainer rows; train/infer mismatch
  config.py      config.rl -> RLSettings (presets, validation)
  step.py        the jitted minibatch update (microbatch scan)
  loop.py        train_rl: the run (Orbax resume, metrics, eval, plot)
"""
