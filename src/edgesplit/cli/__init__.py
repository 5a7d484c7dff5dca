"""edgesplit.cli"""
