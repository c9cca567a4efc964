"""AdaGlimpse at toy scale (Pardyl et al. 2024, arXiv 2404.03482): an agent choosing where and how wide to look.

* :mod:`~efflab.glimpse.sensor`: glimpse boxes from (y, x, z), area-averaged readings, the memory canvas;
* :mod:`~efflab.glimpse.scenes`: cluttered digit canvases, several layouts per digit;
* :mod:`~efflab.glimpse.task_model`: the classifier over glimpse tokens (2D+ box code), trained then frozen;
* :mod:`~efflab.glimpse.env`: the game as a gymnasium environment and a batched stable-baselines3 one;
* :mod:`~efflab.glimpse.features`: the keypoint layer the agent's networks read observations with;
* :mod:`~efflab.glimpse.agents`: Soft Actor-Critic, the baselines, playing and saving policies;
* :mod:`~efflab.glimpse.experiment`: the notebook's settings and budgets, quick and full.
"""
