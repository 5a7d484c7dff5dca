"""edgesplit.planners"""
