"""Record names shared by the ClientApp and the ServerApp for what travels in Flower messages."""

GLOBAL_ADAPTER = "global-adapter"  # ArrayRecord: the global adapter weights (downlink)
TRAIN_CONFIG = "train-config"      # ConfigRecord: TaskSpec fields + round + codec options
UPDATE = "update"                  # ConfigRecord: {"encoded-update": bytes} (uplink)
ENCODED_UPDATE = "encoded-update"
METRICS = "metrics"                # MetricRecord: num-examples, train-loss, bytes-up, train-s
