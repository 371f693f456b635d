"""Dataset families: one LightningDataModule per module, each declaring its TaskSpec."""
