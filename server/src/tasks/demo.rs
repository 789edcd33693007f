//! The built-in `demo` executor: renders a real PNG whose picture follows from the prompt
//! (and the input image, for image-to-image) in `demo.steps` steps over `demo.duration_ms`,
//! reporting honest progress as rows are drawn.

use std::{io::Cursor, time::Duration};

use async_trait::async_trait;
use taskpulse_shared::dto::{AspectRatio, SubmitTaskRequest};

use super::{Artifact, Executor, Job, Progress, fetch::ImageFetcher};
use crate::Settings;

/// Renders pictures on the CPU.
#[derive(Debug)]
pub struct DemoExecutor {
    duration: Duration,
    steps: u32,
    size: u32,
    max_pixels: u64,
    fetcher: ImageFetcher,
}

impl DemoExecutor {
    /// The executor's name.
    pub const NAME: &'static str = "demo";

    /// From `[demo]` and the image fetch limits of `[tasks]`.
    pub fn new(settings: &Settings) -> DemoExecutor {
        DemoExecutor {
            duration: Duration::from_millis(settings.demo.duration_ms),
            steps: settings.demo.steps,
            size: settings.demo.size,
            max_pixels: settings.tasks.image_max_pixels,
            fetcher: ImageFetcher::new(settings),
        }
    }
}

#[async_trait]
impl Executor for DemoExecutor {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn run(&self, job: &Job, progress: &Progress) -> Result<Artifact, String> {
        let (prompt, ratio, input) = match &job.request {
            SubmitTaskRequest::TextToImage { prompt, aspect_ratio } => {
                (prompt, *aspect_ratio, None)
            }
            SubmitTaskRequest::ImageToImage { prompt, image_url, aspect_ratio } => {
                progress.report(0, "fetching the input image").await;
                let bytes = self.fetcher.fetch(image_url).await?;
                (prompt, *aspect_ratio, Some(bytes))
            }
            SubmitTaskRequest::External { .. } => {
                return Err("external tasks are run by an external worker".into());
            }
        };
        let (width, height) = dimensions(ratio, self.size);
        // Decoding is CPU work on untrusted bytes: a blocking thread, never an async worker.
        let (prompt, max_pixels) = (prompt.clone(), self.max_pixels);
        let canvas = tokio::task::spawn_blocking(move || {
            Canvas::new(width, height, &prompt, input.as_deref(), max_pixels)
        })
        .await
        .map_err(|e| format!("could not read the input image: {e}"))?;
        let mut canvas = canvas?;
        let pause = self.duration / self.steps;
        for step in 0..self.steps {
            canvas.paint_rows(step * height / self.steps, (step + 1) * height / self.steps);
            if pause.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(pause).await;
            }
            // The last percents are the encoding, reported by completion itself.
            let percent = ((step + 1) * 95 / self.steps) as u8;
            progress
                .report(percent, format!("rendering, step {} of {}", step + 1, self.steps))
                .await;
        }
        // Compression is CPU work too (milliseconds at 512 pixels): a blocking thread.
        let bytes = tokio::task::spawn_blocking(move || canvas.encode())
            .await
            .map_err(|e| format!("could not encode the image: {e}"))?
            .map_err(|e| format!("could not encode the image: {e}"))?;
        Ok(Artifact { bytes })
    }
}

/// Width and height for a ratio with `size` as the long edge.
pub(super) fn dimensions(ratio: AspectRatio, size: u32) -> (u32, u32) {
    match ratio {
        AspectRatio::Square => (size, size),
        AspectRatio::Landscape4x3 => (size, size * 3 / 4),
        AspectRatio::Landscape16x9 => (size, size * 9 / 16),
        AspectRatio::Portrait9x16 => (size * 9 / 16, size),
    }
}

/// FNV-1a: a stable hash, so that the same prompt draws the same picture on every build.
fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// splitmix64: enough randomness for shapes and colours.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n.max(1))) as u32
    }

    fn colour(&mut self) -> [u8; 3] {
        let v = self.next();
        [v as u8, (v >> 8) as u8, (v >> 16) as u8]
    }
}

struct Disc {
    x: i64,
    y: i64,
    r2: i64,
    colour: [u8; 3],
}

/// The picture being drawn.
struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    from: [u8; 3],
    to: [u8; 3],
    discs: Vec<Disc>,
    /// The input image scaled to the canvas, RGB.
    input: Option<Vec<u8>>,
}

impl Canvas {
    /// # Errors
    /// The input is a PNG that is too large or broken (other formats only seed the picture).
    fn new(
        width: u32,
        height: u32,
        prompt: &str,
        input: Option<&[u8]>,
        max_pixels: u64,
    ) -> Result<Canvas, String> {
        let mut seed = fnv1a(prompt.trim().as_bytes(), 0xcbf2_9ce4_8422_2325);
        if let Some(input) = input {
            seed = fnv1a(input, seed);
        }
        let mut rng = Rng(seed);
        let (from, to) = (rng.colour(), rng.colour());
        let discs = (0..3 + rng.below(6))
            .map(|_| {
                let r = i64::from(width.min(height) / 12 + rng.below(width.min(height) / 4));
                Disc {
                    x: i64::from(rng.below(width)),
                    y: i64::from(rng.below(height)),
                    r2: r * r,
                    colour: rng.colour(),
                }
            })
            .collect();
        let input = match input {
            Some(bytes) => decode_scaled(bytes, width, height, max_pixels)?,
            None => None,
        };
        Ok(Canvas {
            width,
            height,
            pixels: vec![0; (width * height * 3) as usize],
            from,
            to,
            discs,
            input,
        })
    }

    fn paint_rows(&mut self, first: u32, end: u32) {
        let span = u32::max(self.width + self.height, 1);
        for y in first..end.min(self.height) {
            for x in 0..self.width {
                let t = (x + y) * 255 / span;
                let mut rgb: [u8; 3] = std::array::from_fn(|c| mix(self.from[c], self.to[c], t));
                for d in &self.discs {
                    let (dx, dy) = (i64::from(x) - d.x, i64::from(y) - d.y);
                    if dx * dx + dy * dy <= d.r2 {
                        rgb = std::array::from_fn(|c| mix(rgb[c], d.colour[c], 160));
                    }
                }
                let at = ((y * self.width + x) * 3) as usize;
                if let Some(input) = &self.input {
                    rgb = std::array::from_fn(|c| mix(rgb[c], input[at + c], 140));
                }
                self.pixels[at..at + 3].copy_from_slice(&rgb);
            }
        }
    }

    fn encode(&self) -> Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        // fdeflate: a fraction of the default's CPU for a slightly larger file (measured: the
        // default's deflate was a third of the server's CPU in the tasks benchmark).
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.pixels)?;
        writer.finish()?;
        Ok(out)
    }
}

/// `a` blended towards `b` by `t`/255.
fn mix(a: u8, b: u8, t: u32) -> u8 {
    ((u32::from(a) * (255 - t) + u32::from(b) * t) / 255) as u8
}

/// The PNG signature: input that starts with it is decoded, anything else only seeds the
/// picture.
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Decodes a PNG and scales it (nearest neighbour) to `width` x `height` RGB. `Ok(None)` for
/// input that is not a PNG (the picture then follows its bytes' hash).
///
/// The header's dimensions are checked against `max_pixels` before anything is allocated,
/// and rows are decoded one at a time, so a PNG declaring 2^20 x 2^31 pixels costs nothing and
/// a large allowed one costs one row, not the whole frame (interlaced PNGs, whose rows come in
/// passes, take the frame: at most `max_pixels` x 8 bytes).
///
/// # Errors
/// A PNG that is too large or cannot be decoded, said for the user.
fn decode_scaled(
    bytes: &[u8],
    width: u32,
    height: u32,
    max_pixels: u64,
) -> Result<Option<Vec<u8>>, String> {
    if !bytes.starts_with(PNG_SIGNATURE) {
        return Ok(None);
    }
    let broken = |e: png::DecodingError| format!("the input image is not a readable PNG: {e}");
    // The decoder's own buffers (chunks, text) stay small; pixel buffers are ours below.
    let limits = png::Limits { bytes: 8 << 20 };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), limits);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(broken)?;
    let (source_width, source_height, interlaced) = {
        let info = reader.info();
        (info.width, info.height, info.interlaced)
    };
    let pixels = u64::from(source_width) * u64::from(source_height);
    if pixels > max_pixels {
        return Err(format!(
            "the input image is {source_width} x {source_height} pixels, more than the \
             {max_pixels} allowed (tasks.image_max_pixels)"
        ));
    }
    let (color, _) = reader.output_color_type();
    let channels = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        // normalize_to_color8 expands palettes.
        png::ColorType::Indexed => {
            return Err("the input image has an unsupported colour type".into());
        }
    };
    let row_bytes = source_width as usize * channels;
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    let push_row = |row: &[u8], out: &mut Vec<u8>| {
        for x in 0..width {
            let sx = (u64::from(x) * u64::from(source_width) / u64::from(width)) as usize;
            let px = row.get(sx * channels..).unwrap_or_default();
            let rgb = match (channels, px) {
                (1 | 2, [g, ..]) => [*g; 3],
                (_, [r, g, b, ..]) => [*r, *g, *b],
                _ => [0; 3],
            };
            out.extend_from_slice(&rgb);
        }
    };
    let source_row = |y: u32| (u64::from(y) * u64::from(source_height) / u64::from(height)) as u32;
    if interlaced {
        let size = reader.output_buffer_size().ok_or("the input image is too large")?;
        let mut frame = vec![0; size];
        let info = reader.next_frame(&mut frame).map_err(broken)?;
        for y in 0..height {
            let start = source_row(y) as usize * info.line_size;
            push_row(frame.get(start..start + row_bytes).unwrap_or_default(), &mut out);
        }
        return Ok(Some(out));
    }
    let mut row = vec![0; row_bytes];
    let mut current = 0u32;
    let mut have = false;
    for y in 0..height {
        let wanted = source_row(y);
        while !have || current < wanted {
            let next = reader.next_row().map_err(broken)?.ok_or("the input image is truncated")?;
            let data = next.data();
            let len = data.len().min(row.len());
            row[..len].copy_from_slice(&data[..len]);
            if have {
                current += 1;
            }
            have = true;
        }
        push_row(&row, &mut out);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 16_000_000;

    fn render(prompt: &str, input: Option<&[u8]>) -> Vec<u8> {
        let mut canvas = Canvas::new(64, 48, prompt, input, MAX).unwrap();
        canvas.paint_rows(0, 48);
        canvas.encode().unwrap()
    }

    #[test]
    fn the_picture_follows_the_prompt_and_input() {
        let cat = render("a cat", None);
        assert_eq!(&cat[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(cat, render("a cat", None), "same prompt, same picture");
        assert_ne!(cat, render("a dog", None));
        let with_input = render("a cat", Some(&cat));
        assert_ne!(with_input, cat);
        let decoded = decode_scaled(&cat, 32, 24, MAX).unwrap().expect("our own PNG decodes");
        assert_eq!(decoded.len(), 32 * 24 * 3);
        assert_eq!(decode_scaled(b"not a png", 4, 4, MAX), Ok(None));
    }

    /// A PNG that declares `width` x `height` pixels and holds none of them: an IDAT with an
    /// empty zlib stream.
    fn declared_png(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, not interlaced
        let mut png = PNG_SIGNATURE.to_vec();
        for (kind, data) in [
            (b"IHDR", &ihdr[..]),
            (b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01][..]),
            (b"IEND", &[][..]),
        ] {
            let mut typed = kind.to_vec();
            typed.extend_from_slice(data);
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            png.extend_from_slice(&typed);
            png.extend_from_slice(&crc32(&typed).to_be_bytes());
        }
        png
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = u32::MAX;
        for b in bytes {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn a_png_declaring_too_many_pixels_is_refused_before_allocation() {
        // 65 bytes that used to abort the process ("memory allocation of ... failed").
        let bomb = declared_png(1_048_576, 2_147_483_647);
        assert_eq!(bomb.len(), 65);
        let refused = decode_scaled(&bomb, 64, 48, MAX).unwrap_err();
        assert!(refused.contains("tasks.image_max_pixels"), "{refused}");
        let refused = decode_scaled(&declared_png(10_000, 10_000), 64, 48, MAX).unwrap_err();
        assert!(refused.contains("10000 x 10000"), "{refused}");
        // Within the limit but without its pixel data: a clear error, not a panic.
        let truncated = decode_scaled(&declared_png(100, 100), 64, 48, MAX).unwrap_err();
        assert!(truncated.contains("PNG") || truncated.contains("truncated"), "{truncated}");
    }

    #[test]
    fn large_pngs_are_scaled_row_by_row() {
        // A 2000 x 1500 gradient, decoded into 64 x 48 without holding the frame.
        let (w, h) = (2000u32, 1500u32);
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let pixels: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [(x / 8) as u8, (y / 6) as u8, 7]))
            .collect();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&pixels).unwrap();
        writer.finish().unwrap();
        let scaled = decode_scaled(&out, 64, 48, MAX).unwrap().unwrap();
        assert_eq!(scaled.len(), 64 * 48 * 3);
        // Row 47 samples source row 47 * 1500 / 48 = 1468, whose green is 1468 / 6 = 244.
        let last = &scaled[47 * 64 * 3..];
        assert_eq!(last[1], 244);
        assert_eq!(last[63 * 3], (63 * 2000 / 64 / 8) as u8);
        let refused = decode_scaled(&out, 64, 48, 1_000_000).unwrap_err();
        assert!(refused.contains("2000 x 1500"), "{refused}");
    }

    #[test]
    fn ratios_keep_the_long_edge() {
        assert_eq!(dimensions(AspectRatio::Landscape16x9, 512), (512, 288));
        assert_eq!(dimensions(AspectRatio::Portrait9x16, 512), (288, 512));
        assert_eq!(dimensions(AspectRatio::Landscape4x3, 512), (512, 384));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Fetched bytes are untrusted: a PNG with any header dimensions and any corruption
        /// decodes, or is refused with a sentence, within the pixel limit; never a panic.
        #[test]
        fn any_png_like_input_is_decoded_or_refused(
            width in 0u32..=u32::MAX,
            height in 0u32..=u32::MAX,
            flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 0..8),
            small in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = if small {
                render("seed", None)
            } else {
                declared_png(width, height)
            };
            for (at, value) in flips {
                let len = bytes.len();
                bytes[at % len] ^= value;
            }
            if let Ok(Some(rgb)) = decode_scaled(&bytes, 16, 12, 1_000_000) {
                proptest::prop_assert_eq!(rgb.len(), 16 * 12 * 3);
            }
        }
    }
}
