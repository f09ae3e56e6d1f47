"""FedEye: federated, privacy-preserving, domain-generalising learning for ophthalmology on Flower.

Layers: ``protocol`` (the wire keys both sides share), ``client`` (a hospital site),
``server`` and ``strategies`` (the coordinator), ``compose`` (both in one process),
``privacy`` (pure DP planning and accounting, keys), ``sites`` (data formats),
``models``, ``fairness``, ``web`` (shared web pages), ``cli`` (the only terminal code).
"""
