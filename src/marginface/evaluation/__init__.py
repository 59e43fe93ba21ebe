"""marginface.evaluation"""
