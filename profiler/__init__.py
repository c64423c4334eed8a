"""profiler: capture the joint forward+backward graph and measure it into a Profile.

Imports nothing from ``planner`` or ``runtime``.
"""
from .capture import CapturedGraph, CaptureError, autocast_name, capture
from .ir import NodeRecord, OutputRecord, Profile, ProfileFormatError
from .models import ModelSpecError, load_model
from .profile import device_name, profile_captured, profile_model

__all__ = ["CaptureError", "CapturedGraph", "autocast_name", "capture", "NodeRecord",
           "OutputRecord", "Profile", "ProfileFormatError",
           "ModelSpecError", "load_model", "device_name",
           "profile_captured", "profile_model"]
