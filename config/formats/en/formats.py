from config.formats.common import *  # noqa: F403 - the same date formats in every language
