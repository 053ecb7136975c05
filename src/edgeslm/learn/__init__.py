"""Learning on the device: LoRA personalization (``personalize``), federated learning on Flower (``federate``).

``learn.adapter`` is the device side (numpy + onnxruntime only); everything else is build side (torch, peft, flwr).
"""
