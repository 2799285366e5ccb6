"""curate: data curation for image-text pretraining corpora (Beam + open_clip + FAISS + WebDataset)."""

__version__ = "0.1.0"
