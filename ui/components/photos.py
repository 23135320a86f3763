"""Take a photo with the laptop's camera, or choose a picture file; returns its bytes.

The camera path uses the browser's getUserMedia and a canvas (a JPEG data URL comes back over the
page's socket); the file path is NiceGUI's upload, with `capture` so that a tablet opens its camera.
Either way the bytes go to `store.photos`, which checks that they are a picture.
"""

import base64
import binascii

from nicegui import ui
from nicegui.events import UploadEventArguments

from ui.frame import BUTTON

_START_CAMERA = """
(async () => {
  const video = document.getElementById('%(id)s');
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return 'no camera';
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({video: {facingMode: 'environment'}});
    await video.play();
    return 'ok';
  } catch (error) { return String(error && error.name || error); }
})()
"""
_CAPTURE = """
(() => {
  const video = document.getElementById('%(id)s');
  if (!video || !video.videoWidth) return null;
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext('2d').drawImage(video, 0, 0);
  (video.srcObject ? video.srcObject.getTracks() : []).forEach(t => t.stop());
  return canvas.toDataURL('image/jpeg', 0.9);
})()
"""
_STOP_CAMERA = """
(() => {
  const video = document.getElementById('%(id)s');
  (video && video.srcObject ? video.srcObject.getTracks() : []).forEach(t => t.stop());
})()
"""


async def take_photo(title: str) -> bytes | None:
    """Show the photo dialog; the picture's bytes, or None when the person cancelled."""
    with ui.dialog().props("persistent") as dialog, ui.card().classes("w-[44rem] max-w-full gap-4 p-6"):
        dialog.props("data-testid=photo-dialog")
        ui.label(title).classes("text-2xl font-bold")
        problem = ui.label().classes("text-lg text-red-800").props("data-testid=photo-problem")
        video = ui.element("video").props("autoplay playsinline muted").classes("w-full bg-black rounded")
        video_id = f"c{video.id}"
        video.props(f"id={video_id}")

        async def start_camera() -> None:
            answer = await ui.run_javascript(_START_CAMERA % {"id": video_id}, timeout=15)
            if answer != "ok":
                problem.text = f"The camera could not be started ({answer}). Choose a file."

        async def capture() -> None:
            data_url = await ui.run_javascript(_CAPTURE % {"id": video_id}, timeout=10)
            content = _decode_data_url(data_url)
            if content is None:
                problem.text = "No picture was taken: start the camera first, or choose a file."
                return
            dialog.submit(content)

        async def uploaded(event: UploadEventArguments) -> None:
            dialog.submit(await event.file.read())

        def cancel() -> None:
            ui.run_javascript(_STOP_CAMERA % {"id": video_id})
            dialog.submit(None)

        with ui.row().classes("gap-4"):
            ui.button("Start camera", icon="videocam", on_click=start_camera).classes(BUTTON).props(
                "data-testid=photo-camera"
            )
            ui.button("Take photo", icon="photo_camera", on_click=capture).classes(BUTTON).props(
                "color=primary data-testid=photo-capture"
            )
        ui.upload(label="…or choose a picture file", auto_upload=True, on_upload=uploaded).props(
            "accept=image/* capture=environment data-testid=photo-upload"
        ).classes("w-full")
        ui.button("Cancel", on_click=cancel).classes(BUTTON).props("flat data-testid=photo-cancel")
    dialog.open()
    content = await dialog
    dialog.delete()
    return content


def _decode_data_url(data_url: object) -> bytes | None:
    if not isinstance(data_url, str) or "," not in data_url or not data_url.startswith("data:image/"):
        return None
    try:
        return base64.b64decode(data_url.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        return None
