"""marginface.training"""
