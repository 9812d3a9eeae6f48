"""Training: the config, the data sources, the training loop, evaluation, plots and archive.

`atelier train` writes a run folder (training.loop); `atelier archive` turns it into a
versioned .mar in the model store (training.archive), with the TorchServe templates this
package ships as package data (training/templates/).
"""
