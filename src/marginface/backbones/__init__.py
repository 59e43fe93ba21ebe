"""marginface.backbones"""
