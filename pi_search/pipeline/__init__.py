"""The frame pipeline: gate, framing, extractor, search and stabilising, run by one worker thread."""
