"""edgesplit.offload"""
