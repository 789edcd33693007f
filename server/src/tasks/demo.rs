//! The built-in `demo` executor: renders a real PNG whose picture follows from the prompt
//! (and the input image, for image-to-image) in `demo.steps` steps over `demo.duration_ms`,
//! reporting honest progress as rows are drawn.

use std::{io::Cursor, time::Duration};

use async_trait::async_trait;
use taskpulse_shared::dto::{AspectRatio, SubmitTaskRequest};

use super::{Artifact, Executor, Job, Progress};
use crate::Settings;

/// Renders pictures on the CPU.
#[derive(Debug)]
pub struct DemoExecutor {
    duration: Duration,
    steps: u32,
    size: u32,
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
        let mut canvas = Canvas::new(width, height, prompt, input.as_deref());
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
        let bytes = canvas.encode().map_err(|e| format!("could not encode the image: {e}"))?;
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
    fn new(width: u32, height: u32, prompt: &str, input: Option<&[u8]>) -> Canvas {
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
        let input = input.and_then(|bytes| decode_scaled(bytes, width, height));
        Canvas {
            width,
            height,
            pixels: vec![0; (width * height * 3) as usize],
            from,
            to,
            discs,
            input,
        }
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

/// Decodes a PNG and scales it (nearest neighbour) to `width` x `height` RGB; `None` for
/// anything that is not a PNG of sensible size (the picture then follows its bytes' hash).
fn decode_scaled(bytes: &[u8], width: u32, height: u32) -> Option<Vec<u8>> {
    let mut decoder =
        png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: 64 << 20 });
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().ok()?;
    let mut buf = vec![0; reader.output_buffer_size()?];
    let info = reader.next_frame(&mut buf).ok()?;
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return None,
    };
    let mut out = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        let sy = (u64::from(y) * u64::from(info.height) / u64::from(height)) as usize;
        for x in 0..width {
            let sx = (u64::from(x) * u64::from(info.width) / u64::from(width)) as usize;
            let px = &buf[sy * info.line_size + sx * channels..];
            if channels < 3 {
                out.extend_from_slice(&[px[0]; 3]);
            } else {
                out.extend_from_slice(&px[..3]);
            }
        }
    }
    Some(out)
}

/// Fetches input images with a size and time limit.
#[derive(Debug, Clone)]
pub(super) struct ImageFetcher {
    client: reqwest::Client,
    limit: usize,
}

impl ImageFetcher {
    pub(super) fn new(settings: &Settings) -> ImageFetcher {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.tasks.image_fetch_timeout_ms))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .expect("a plain HTTP client builds");
        ImageFetcher { client, limit: settings.tasks.image_fetch_bytes }
    }

    /// The image at `url`.
    ///
    /// # Errors
    /// A sentence for the user: unreachable, not 2xx, too large, too slow.
    pub(super) async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let fail = |e: reqwest::Error| {
            if e.is_timeout() {
                format!("fetching imageUrl timed out ({url})")
            } else {
                format!("could not fetch imageUrl {url}: {e}")
            }
        };
        let mut response = self.client.get(url).send().await.map_err(fail)?;
        if !response.status().is_success() {
            return Err(format!("fetching imageUrl {url} answered {}", response.status()));
        }
        let too_large = || format!("the image at imageUrl is larger than {} bytes", self.limit);
        if response.content_length().is_some_and(|n| n > self.limit as u64) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fail)? {
            if bytes.len() + chunk.len() > self.limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(prompt: &str, input: Option<&[u8]>) -> Vec<u8> {
        let mut canvas = Canvas::new(64, 48, prompt, input);
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
        let decoded = decode_scaled(&cat, 32, 24).expect("our own PNG decodes");
        assert_eq!(decoded.len(), 32 * 24 * 3);
        assert!(decode_scaled(b"not a png", 4, 4).is_none());
    }

    #[test]
    fn ratios_keep_the_long_edge() {
        assert_eq!(dimensions(AspectRatio::Landscape16x9, 512), (512, 288));
        assert_eq!(dimensions(AspectRatio::Portrait9x16, 512), (288, 512));
        assert_eq!(dimensions(AspectRatio::Landscape4x3, 512), (512, 384));
    }
}
