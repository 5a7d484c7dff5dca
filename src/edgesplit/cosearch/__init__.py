"""edgesplit.cosearch"""
