"""The three methods, as library calls over in-memory models and task data (no workdir needed):
``taco`` (few-shot task-aware compression), ``dcvit`` (dense few-shot ViT compression),
``transfer`` (task-oriented knowledge transfer); ``adapt`` and ``retrieval`` are their shared
parts (the task teacher's head; nearest-neighbour retrieval of transfer images)."""
