"""Drop-in Lightning Callbacks, one file per paper; each works on any LightningModule."""
