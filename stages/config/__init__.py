"""Typed configuration: one dataclass per config node, registered in Hydra's ConfigStore.

``sections`` holds the shared groups (model, data, objective, loss, world, tracking), ``recipe`` the recipe
section, ``run_config`` the top-level :class:`~stages.config.run_config.RunConfig`, ``stage_base`` and the
``*_configs`` modules one dataclass per stage (tabled in ``stage_configs`` with those of the drivers
``stage=iterate`` and ``stage=verify``, the latter in ``verify_config``), ``checks`` the shared bounds checks (finite numbers, minimums), ``recipe_settings`` the merge
of a recipe's per-stage settings, ``validate`` every problem at once, ``store`` the ConfigStore registration and
override checking (unknown keys, unknown group options). Imports point one way: checks -> sections/recipe ->
run_config -> stage configs -> stage_configs -> recipe_settings -> validate / store.
"""
