"""Models: the generic backbone (encoder -> residual blocks -> decoder) and the certified DeepSSM."""
