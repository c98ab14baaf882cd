import os

# Ultralytics must never reach the network (settings sync, font or weight downloads) during tests.
os.environ.setdefault("YOLO_OFFLINE", "1")
