/* Decode one rectangle of a JPEG with libjpeg(-turbo), skipping the work outside it.
 *
 * A training crop covers ~40 % of the image on average (tf_cnn and Inception crops), yet a full decode runs the
 * inverse DCT, chroma upsampling and colour conversion on every pixel. libjpeg-turbo (>= 1.5) can restrict
 * that work: jpeg_skip_scanlines() passes over the rows above the rectangle without the inverse DCT,
 * jpeg_crop_scanline() limits every later stage to the rectangle's columns (widened to whole iMCUs), and the
 * rows below it are never read. Entropy decoding still runs up to the rectangle's last row: JPEG's Huffman
 * stream is sequential. This is what TensorFlow's DecodeAndCropJpeg and DALI's ROI decoders do.
 *
 * Plain C with a C ABI, loaded with ctypes (data/jpeg_region.py): no Python headers, no GIL handling. libjpeg's
 * default error handler calls exit(); here fatal errors longjmp back and come out as a return code + message.
 */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

struct region_error {
  struct jpeg_error_mgr pub;
  jmp_buf escape;
  char message[JMSG_LENGTH_MAX];
};

static void on_fatal(j_common_ptr cinfo) {
  struct region_error *err = (struct region_error *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->escape, 1);
}

/* Warnings ("Corrupt JPEG data: N extraneous bytes before marker", premature end of data) are not errors:
 * several ImageNet files carry such defects and OpenCV, PIL and TensorFlow all decode them. Stay silent. */
static void on_message(j_common_ptr cinfo) { (void)cinfo; }

/* Decode rows [y, y + h) and at least columns [x, x + w) of the image scaled by 1/scale_denom (1, 2, 4 or 8,
 * in the DCT domain) into `out`: h rows of `out_width` pixels x `channels` (1: grayscale, 3: RGB) uint8.
 * Row i of `out` holds scanline y + i from column *x_start on (*x_start <= x, iMCU-aligned), *decoded_width
 * columns of it valid. Coordinates are in the scaled image's pixels.
 * Returns 0 on success, 1 when the image's colour space is not one libjpeg converts to RGB (CMYK, YCCK: the
 * caller decodes such files another way), 2 when the rectangle is outside the image or wider than
 * out_width, -1 when libjpeg fails (message in `message`). */
int rr_decode_region(const unsigned char *data, unsigned long size, int scale_denom, int channels, int y, int x,
                     int h, int w, unsigned char *out, int out_width, int *x_start, int *decoded_width,
                     char *message, int message_size) {
  struct jpeg_decompress_struct cinfo;
  struct region_error err;
  JDIMENSION xoff, width;
  JSAMPROW row;
  int status = 0;

  message[0] = '\0';
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = on_fatal;
  err.pub.output_message = on_message;
  err.message[0] = '\0';
  jpeg_create_decompress(&cinfo);
  if (setjmp(err.escape)) {
    snprintf(message, message_size, "%s", err.message);
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  cinfo.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  cinfo.scale_num = 1;
  cinfo.scale_denom = scale_denom;
  jpeg_start_decompress(&cinfo);
  if (x < 0 || y < 0 || w <= 0 || h <= 0 || (JDIMENSION)(x + w) > cinfo.output_width ||
      (JDIMENSION)(y + h) > cinfo.output_height) {
    snprintf(message, message_size, "rectangle y=%d x=%d h=%d w=%d is outside the %ux%u image", y, x, h, w,
             cinfo.output_height, cinfo.output_width);
    status = 2;
  } else {
    xoff = (JDIMENSION)x;
    width = (JDIMENSION)w;
    jpeg_crop_scanline(&cinfo, &xoff, &width);
    if (width > (JDIMENSION)out_width) {
      snprintf(message, message_size, "iMCU-aligned width %u exceeds the buffer's %d", width, out_width);
      status = 2;
    } else {
      if (y > 0)
        jpeg_skip_scanlines(&cinfo, (JDIMENSION)y);
      while (cinfo.output_scanline < (JDIMENSION)(y + h)) {
        row = out + (size_t)(cinfo.output_scanline - y) * (size_t)out_width * (size_t)channels;
        jpeg_read_scanlines(&cinfo, &row, 1);
      }
      *x_start = (int)xoff;
      *decoded_width = (int)width;
    }
  }
  jpeg_abort_decompress(&cinfo); /* the rows below the rectangle are never decoded */
  jpeg_destroy_decompress(&cinfo);
  return status;
}
