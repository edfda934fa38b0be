"""What the video pipeline raises and warns."""


class VideoError(ValueError):
    """A video that cannot be read, or an output that cannot be made as asked. Raised before any
    frame is processed whenever the problem is knowable up front."""


class VideoWarning(UserWarning):
    """Something was changed or concealed on the way (a corrupt packet, a dropped alpha plane,
    a cropped odd pixel); the job still finishes."""
