"""Evaluation: the paper's tables and figures computed from the serving pipeline's own answers
(`avn evaluate`), the resampling ablation (`avn ablation`) and reader studies (`avn readers`)."""
