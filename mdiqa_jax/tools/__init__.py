"""Tools around the models: the ablation / semi-supervision sweep and its report."""
