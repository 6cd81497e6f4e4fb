# images/: the image format (manifest, chunk objects), repositories, and the
# `rackdisk image ...` commands.
IMAGES_SRCS += images/manifest.c images/chunkobj.c images/repo.c images/source.c \
	images/publish.c images/image_cmd.c images/repoloc.c
