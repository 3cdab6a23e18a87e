"""Data for T5 pretraining: span corruption, corpora, vocabularies and the trainer's input pipeline."""
