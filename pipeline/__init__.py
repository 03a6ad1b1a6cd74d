"""The pipeline's contract, independent of torch and of any stage: the stage-directory contract
(``artifacts``, ``stage_run``), what a stage is to the runner (``protocol``), the run layout (``layout``: every
stage, file and directory name), round wiring (``rounds``) and the multi-round summary (``summary``)."""
